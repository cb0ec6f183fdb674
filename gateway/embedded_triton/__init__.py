"""The embedded Triton server: started from the nvidia-pytriton wheel."""
