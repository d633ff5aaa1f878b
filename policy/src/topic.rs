//! MQTT topic names and topic filters (MQTT 3.1.1 §4.7), as far as the
//! policy and the device ACL need them: matching a topic against a filter,
//! and deciding whether one filter is contained in another.

/// Whether `filter` is a syntactically valid MQTT topic filter.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return false;
        }
        if level.contains('+') && *level != "+" {
            return false;
        }
    }
    true
}

/// Whether `topic` is a valid topic name for publishing: no wildcards.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['#', '+', '\0'])
}

/// Whether the topic name `topic` matches the topic filter `filter`.
///
/// Topics starting with `$` are not matched by a leading wildcard, as the
/// specification requires (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by `inner` is also matched by `outer`.
///
/// Used to allow a SUBSCRIBE only when the requested filter stays inside one
/// of the device's permitted patterns: `devices/a/cmd/+` is inside
/// `devices/a/#`, while `devices/+/cmd` is not.
pub fn filter_within(inner: &str, outer: &str) -> bool {
    // A leading wildcard in `outer` never reaches `$` topics (§4.7.2).
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    let mut i = inner.split('/');
    let mut o = outer.split('/');
    loop {
        match (i.next(), o.next()) {
            (_, Some("#")) => return true,
            (Some("#"), _) => return false,
            (Some("+"), Some("+")) => {}
            (Some("+"), Some(_)) => return false,
            (Some(_), Some("+")) => {}
            (Some(il), Some(ol)) if il == ol => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name matches both filters.
///
/// Used to keep devices' topic spaces apart: a device whose patterns
/// overlap another's could publish into its command topics.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    // A leading wildcard cannot reach `$` topics, so a `$` literal only
    // meets another `$` literal or a filter starting with that same level.
    if (a.starts_with('$') && (b.starts_with('+') || b.starts_with('#')))
        || (b.starts_with('$') && (a.starts_with('+') || a.starts_with('#')))
    {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(l), Some(r)) if l == r => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_specification() {
        assert!(matches("a/b", "a/b"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("a//b", "a//b"));
    }

    #[test]
    fn containment_of_filters() {
        assert!(filter_within("devices/a/cmd/+", "devices/a/#"));
        assert!(filter_within("devices/a/#", "devices/a/#"));
        assert!(filter_within("devices/a", "devices/a/#"));
        assert!(!filter_within("devices/+/cmd", "devices/a/#"));
        assert!(!filter_within("#", "devices/a/#"));
        assert!(!filter_within("devices/#", "devices/a/#"));
        assert!(filter_within("x/y/z", "x/+/z"));
        assert!(!filter_within("x/+/z", "x/y/z"));
        assert!(!filter_within("$SYS/a", "#"));
        assert!(filter_within("$SYS/a", "$SYS/#"));
    }

    #[test]
    fn overlap_of_filters() {
        assert!(filters_overlap("devices/#", "devices/a/cmd/+"));
        assert!(filters_overlap("+/a/#", "x/+/y"));
        assert!(filters_overlap("a/b", "a/b"));
        assert!(!filters_overlap("devices/a/#", "devices/b/#"));
        assert!(!filters_overlap("a/+", "a/b/c"));
        assert!(filters_overlap("a/#", "a"));
        assert!(!filters_overlap("#", "$SYS/x"));
        assert!(!filters_overlap("tele/a/#", "cmnd/a/#"));
    }

    #[test]
    fn filter_validity() {
        assert!(is_valid_filter("a/#"));
        assert!(is_valid_filter("+/b/+"));
        assert!(!is_valid_filter("a/#/b"));
        assert!(!is_valid_filter("a/b#"));
        assert!(!is_valid_filter("a+/b"));
        assert!(!is_valid_filter(""));
        assert!(is_valid_topic("a/b"));
        assert!(!is_valid_topic("a/+"));
    }
}
