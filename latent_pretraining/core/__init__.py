"""The bottom layer every other imports: mesh and axis rules, train state, optimizer, train step,
loop, checkpoints, batch streams, logging, shared run-config fields, file safety, CLI plumbing."""
