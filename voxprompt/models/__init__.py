"""Model architectures (dimension-generic SAM parts, SAM-Med2D adapter, SAM-UNet) and the zoo."""
