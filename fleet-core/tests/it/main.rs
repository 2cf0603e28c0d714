//! fleet-core integration tests: scripted interactions, the simulator over many seeds, and the
//! proof that the simulator catches deliberately broken protocol variants.

mod broken_variants;
mod interaction;
mod simulator;
