//! Quoting untrusted input inside error messages: a cell, a header line or a peer's reason can
//! be megabytes long, and an error that repeats it whole floods logs, terminals and the job
//! record. Every error that quotes such input caps it here.

/// The most bytes of quoted input an error message repeats.
pub const QUOTE_LIMIT: usize = 200;

/// `s` if it is at most [`QUOTE_LIMIT`] bytes, else its first [`QUOTE_LIMIT`] bytes (cut at a
/// character boundary) followed by `…` and how many bytes were left out.
pub fn cap_quote(s: &str) -> String {
    cap_to(s, QUOTE_LIMIT)
}

/// [`cap_quote`] with another limit, for texts that may say more (a reason kept with a job).
pub fn cap_to(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(cap_quote("tenure"), "tenure");
        assert_eq!(cap_quote(&"x".repeat(QUOTE_LIMIT)), "x".repeat(QUOTE_LIMIT));
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis_and_the_count() {
        let capped = cap_quote(&"a".repeat(1 << 20));
        assert_eq!(capped, format!("{}… ({} more bytes)", "a".repeat(QUOTE_LIMIT), (1 << 20) - QUOTE_LIMIT));
    }

    #[test]
    fn cut_never_splits_a_character() {
        // 'é' is two bytes: a limit falling inside one moves back to its start.
        let s = "é".repeat(200);
        let capped = cap_to(&s, 5);
        assert!(capped.starts_with("éé…"), "{capped}");
        assert!(capped.ends_with("(396 more bytes)"), "{capped}");
    }
}
