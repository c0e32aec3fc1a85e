//! HTTP/2's legal ranges for settings (RFC 9113 §6.5.2, §6.9.1). h2 asserts on values outside
//! them, so configured values are clamped here instead of ever reaching an assert.

/// SETTINGS_MAX_FRAME_SIZE lower bound: 2^14 (RFC 9113 §6.5.2).
const MIN_FRAME_SIZE: u32 = 1 << 14;
/// SETTINGS_MAX_FRAME_SIZE upper bound: 2^24 - 1 (RFC 9113 §6.5.2).
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// Largest flow-control window: 2^31 - 1 (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

pub(crate) fn frame_size(configured: u32) -> u32 {
    configured.clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE)
}

pub(crate) fn window(configured: u32) -> u32 {
    configured.min(MAX_WINDOW)
}

/// h2 counts the send buffer in a u32.
pub(crate) fn send_buffer(configured: usize) -> usize {
    configured.min(u32::MAX as usize)
}

#[cfg(test)]
mod tests {
    #[test]
    fn clamps_into_protocol_ranges() {
        assert_eq!(super::frame_size(0), 16_384);
        assert_eq!(super::frame_size(1 << 20), 1 << 20);
        assert_eq!(super::frame_size(u32::MAX), 16_777_215);
        assert_eq!(super::window(u32::MAX), 2_147_483_647);
        assert_eq!(super::send_buffer(usize::MAX), u32::MAX as usize);
    }
}
