//! TOML configuration (`config/rebound.toml`); unknown keys are errors.
