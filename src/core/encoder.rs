//! Placeholder: filled in by the core issue.

/// Placeholder.
pub struct Encoder;
/// Placeholder.
pub struct EncoderConfig;
