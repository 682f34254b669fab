"""Examples built on label-merge: generators, discriminator, losses, datasets, training."""
