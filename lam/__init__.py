"""Latent action model (stage 1 of LAPA): arrives with its own issue."""
