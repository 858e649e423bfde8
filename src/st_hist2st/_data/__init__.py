"""Everything between AnnData / ImageContainer / SpatialData and tensors."""
