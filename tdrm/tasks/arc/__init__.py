"""ARC-AGI: data versions and splits (`data`), grid encoding and augmentations (`grids`)."""
