pub use spf_core::*;
