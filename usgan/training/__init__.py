"""Training US-GAN: config, data, losses, one step, state (checkpoints, RNG, resume), the run loop, DDP setup."""
