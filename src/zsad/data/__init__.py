"""zsad.data: dataset readers (datasets), robust image loading (images), synthetic defect data
(synthetic)."""
