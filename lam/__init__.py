"""Latent action model (stage 1 of LAPA): LAQ model, quantizers, data, training, labelling."""
