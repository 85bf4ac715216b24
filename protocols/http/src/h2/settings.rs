//! The HTTP/2 settings Flowgate sets on its connections, with their defaults and ranges.

/// The largest flow-control window (RFC 9113 §6.5.2, §6.9.1): 2^31 - 1 bytes.
pub const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;

/// The smallest SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2): 2^14 bytes, also its initial
/// value.
pub const MIN_FRAME_SIZE: u32 = 16_384;

/// The largest SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2): 2^24 - 1 bytes.
pub const MAX_FRAME_SIZE_LIMIT: u32 = 16_777_215;

/// The smallest SETTINGS_MAX_HEADER_LIST_SIZE Flowgate accepts in its configuration (its
/// own floor: the RFC sets none, but a smaller list refuses ordinary requests).
pub const MIN_HEADER_LIST_SIZE: u32 = 1024;

/// HTTP/2 settings of one side of a connection, as plain numbers.
///
/// The server side (`demux-http`) sends all of them; the client side (`mux-http`) sends
/// all but `max_concurrent_streams`, which there caps the requests it puts on one
/// connection (the server's own SETTINGS_MAX_CONCURRENT_STREAMS lowers it further).
///
/// ```
/// use flowgate_http::h2::{Settings, SettingsError};
/// assert_eq!(Settings::default().validate(), Ok(()));
/// let tiny = Settings { max_frame_size: 1024, ..Settings::DEFAULT };
/// assert_eq!(tiny.validate(), Err(SettingsError::MaxFrameSize));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams the peer may have open at once. At least 1
    /// (the RFC allows 0, which refuses every stream). Default 100.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest decoded header list, in bytes by RFC 9113
    /// §6.5.2's accounting. At least [`MIN_HEADER_LIST_SIZE`]. Default 64 KiB.
    pub max_header_list_size: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: each stream's receive window. At most
    /// [`MAX_WINDOW_SIZE`]. Default 1 MiB.
    pub initial_window_size: u32,
    /// The connection's receive window (not a setting: raised with a WINDOW_UPDATE on
    /// stream 0 after the preface). At most [`MAX_WINDOW_SIZE`]. Default 4 MiB.
    pub initial_connection_window_size: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame payload the peer may send, from
    /// [`MIN_FRAME_SIZE`] to [`MAX_FRAME_SIZE_LIMIT`]. Default 16 KiB.
    pub max_frame_size: u32,
}

impl Settings {
    /// The defaults of both sides.
    pub const DEFAULT: Settings = Settings {
        max_concurrent_streams: 100,
        max_header_list_size: 64 * 1024,
        initial_window_size: 1 << 20,
        initial_connection_window_size: 4 << 20,
        max_frame_size: MIN_FRAME_SIZE,
    };

    /// Checks each value against the range HTTP/2 (and Flowgate's floors) allow.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.max_concurrent_streams == 0 {
            return Err(SettingsError::MaxConcurrentStreams);
        }
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&self.max_frame_size) {
            return Err(SettingsError::MaxFrameSize);
        }
        if self.initial_window_size > MAX_WINDOW_SIZE
            || self.initial_connection_window_size > MAX_WINDOW_SIZE
        {
            return Err(SettingsError::WindowSize);
        }
        if self.max_header_list_size < MIN_HEADER_LIST_SIZE {
            return Err(SettingsError::MaxHeaderListSize);
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::DEFAULT
    }
}

/// A [`Settings`] value out of its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// `max_concurrent_streams` is 0.
    #[error("max_concurrent_streams must be at least 1")]
    MaxConcurrentStreams,
    /// `max_frame_size` is out of its range.
    #[error("max_frame_size must be from 16384 to 16777215")]
    MaxFrameSize,
    /// A window size is 2^31 or more.
    #[error("window sizes must be below 2^31")]
    WindowSize,
    /// `max_header_list_size` is below [`MIN_HEADER_LIST_SIZE`].
    #[error("max_header_list_size must be at least 1024")]
    MaxHeaderListSize,
}

impl SettingsError {
    /// The message, as a static string (configuration errors are reported as such).
    pub fn as_str(self) -> &'static str {
        match self {
            SettingsError::MaxConcurrentStreams => "max_concurrent_streams must be at least 1",
            SettingsError::MaxFrameSize => "max_frame_size must be from 16384 to 16777215",
            SettingsError::WindowSize => "window sizes must be below 2^31",
            SettingsError::MaxHeaderListSize => "max_header_list_size must be at least 1024",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_each_range_is_checked_at_its_edges() {
        assert_eq!(Settings::default(), Settings::DEFAULT);
        assert_eq!(Settings::DEFAULT.validate(), Ok(()));
        let d = Settings::DEFAULT;
        let ok = [
            Settings {
                max_concurrent_streams: 1,
                ..d
            },
            Settings {
                max_frame_size: MIN_FRAME_SIZE,
                ..d
            },
            Settings {
                max_frame_size: MAX_FRAME_SIZE_LIMIT,
                ..d
            },
            Settings {
                initial_window_size: MAX_WINDOW_SIZE,
                ..d
            },
            Settings {
                initial_window_size: 0,
                ..d
            },
            Settings {
                initial_connection_window_size: MAX_WINDOW_SIZE,
                ..d
            },
            Settings {
                max_header_list_size: MIN_HEADER_LIST_SIZE,
                ..d
            },
        ];
        for s in ok {
            assert_eq!(s.validate(), Ok(()), "{s:?}");
        }
        let bad = [
            (
                Settings {
                    max_concurrent_streams: 0,
                    ..d
                },
                SettingsError::MaxConcurrentStreams,
            ),
            (
                Settings {
                    max_frame_size: MIN_FRAME_SIZE - 1,
                    ..d
                },
                SettingsError::MaxFrameSize,
            ),
            (
                Settings {
                    max_frame_size: 1 << 24,
                    ..d
                },
                SettingsError::MaxFrameSize,
            ),
            (
                Settings {
                    initial_window_size: 1 << 31,
                    ..d
                },
                SettingsError::WindowSize,
            ),
            (
                Settings {
                    initial_connection_window_size: u32::MAX,
                    ..d
                },
                SettingsError::WindowSize,
            ),
            (
                Settings {
                    max_header_list_size: 1023,
                    ..d
                },
                SettingsError::MaxHeaderListSize,
            ),
        ];
        for (s, e) in bad {
            assert_eq!(s.validate(), Err(e), "{s:?}");
            assert_eq!(e.as_str(), e.to_string());
        }
    }
}
