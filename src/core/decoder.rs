//! Placeholder: filled in by the core issue.

/// Placeholder.
pub struct Decoder;
/// Placeholder.
pub struct DecoderConfig;
