"""InfiniteYou (FLUX.1-dev): identity resampler tokens into InfuseNet (ComfyUI's own ControlNet)."""
