//! Topic names and topic filters (MQTT §4.7): what PUBLISH may name and what SUBSCRIBE may
//! match. Both are UTF-8 strings without U+0000 (checked when they are read); here the
//! wildcard rules and the length limit.

use crate::error::TopicError;

/// Checks a topic name: non-empty, at most `max` bytes, no `+` or `#`.
///
/// ```
/// use flowgate_mqtt::{TopicError, validate_topic_name};
/// assert!(validate_topic_name("sensors/kitchen/temp", 65535).is_ok());
/// assert_eq!(validate_topic_name("sensors/+/temp", 65535), Err(TopicError::Wildcard));
/// ```
pub fn validate_topic_name(name: &str, max: usize) -> Result<(), TopicError> {
    check_len(name, max)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a topic filter: non-empty, at most `max` bytes, `+` alone in its level, `#` alone
/// in the last level. With `shared` (MQTT 5), `$share/{name}/{filter}` must have a non-empty
/// share name without wildcards and a valid filter after it.
///
/// ```
/// use flowgate_mqtt::{TopicError, validate_topic_filter};
/// assert!(validate_topic_filter("sensors/+/temp/#", 65535, true).is_ok());
/// assert!(validate_topic_filter("$share/group/a/#", 65535, true).is_ok());
/// assert_eq!(validate_topic_filter("a/b#", 65535, true), Err(TopicError::MisplacedWildcard));
/// ```
pub fn validate_topic_filter(filter: &str, max: usize, shared: bool) -> Result<(), TopicError> {
    check_len(filter, max)?;
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) if shared => {
            let (name, rest) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if name.is_empty() || name.contains(['+', '#']) || rest.is_empty() {
                return Err(TopicError::BadShare);
            }
            rest
        }
        _ => filter,
    };
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "+" => true,
            "#" => last,
            _ => !level.contains(['+', '#']),
        };
        if !ok {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

fn check_len(s: &str, max: usize) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max {
        return Err(TopicError::TooLong { len: s.len(), max });
    }
    Ok(())
}
