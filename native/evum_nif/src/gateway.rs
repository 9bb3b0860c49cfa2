//! The Erlang face of evum_core::gateway.
