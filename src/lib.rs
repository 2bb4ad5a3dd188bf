#![doc = include_str!("../README.md")]

pub use spf_core::*;
