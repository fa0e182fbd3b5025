//! `*` wildcard matching for event types (`order.charge.*`, docs/digital-river.md §3.1) and fault paths.

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::glob_match;

    #[test]
    fn matches_wildcards() {
        assert!(glob_match(
            "order.charge.*",
            "order.charge.capture.complete"
        ));
        assert!(glob_match("*", "fulfillment.created"));
        assert!(glob_match(
            "order.*.complete",
            "order.charge.capture.complete"
        ));
        assert!(glob_match("/fulfillments/*", "/fulfillments/ful_1"));
        assert!(!glob_match("order.charge.*", "order.complete"));
        assert!(!glob_match("/fulfillments", "/fulfillments/x"));
        assert!(glob_match("order.accepted", "order.accepted"));
    }
}
