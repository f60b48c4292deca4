//! Tiny URL helpers for the public endpoints: percent-decoding and reading the few query
//! parameters Herald understands (`topics`, `echo`). Browsers percent-encode `{` and `}` in
//! paths, so `/raw/%7Bg1%7D:room` must reach the registry as `{g1}:room`.

/// Decodes `%XX` escapes (and `+` only when `plus_is_space`). `None` if the result is not
/// UTF-8 or an escape is malformed.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                // Two hex digits exactly: from_str_radix alone would take a sign (`%+4`).
                let (hi, lo) = (hex_digit(*b.get(i + 1)?)?, hex_digit(*b.get(i + 2)?)?);
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The decoded value of the first `name=` parameter in `query`.
pub fn param(query: Option<&str>, name: &str) -> Option<Result<String, ()>> {
    let q = query?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v, true).ok_or(()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(percent_decode("%7Bg1%7D:room", false).as_deref(), Some("{g1}:room"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%ff", false), None);
        assert_eq!(percent_decode("%+4", false), None);
        assert_eq!(percent_decode("%-1", false), None);
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%2F%2f", false).as_deref(), Some("//"));
        assert_eq!(param(Some("x=1&topics=a,b"), "topics"), Some(Ok("a,b".into())));
        assert_eq!(param(Some("echo=false"), "topics"), None);
        assert_eq!(param(None, "topics"), None);
    }
}
