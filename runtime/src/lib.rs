//! `itarflow-rt`, the Burn-free runtime for exported model packages (its own issue); nothing here yet.
