//! evum.toml and the original evm.cfg: networks and images.
