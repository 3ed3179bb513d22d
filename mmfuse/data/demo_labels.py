"""The demo catalogue's labels: a shape (only the image shows it) made of a material (only the text states it)."""

SHAPES = ("circle", "square", "triangle")
MATERIALS = {
    "wood": ("wooden", "oak", "pine", "timber", "bamboo", "walnut", "birch"),
    "metal": ("metal", "steel", "iron", "aluminium", "copper", "brass", "chrome"),
}
LABELS = tuple(f"{shape}-{material}" for shape in SHAPES for material in MATERIALS)
