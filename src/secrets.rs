//! Credentials never printed: URLs lose their user information before they are logged, shown
//! in an error, or echoed back.
//!
//! Works on the raw text, not on a parsed URL, because the URLs that most need it do not parse:
//! a password with an unencoded `/` or `@` (`redis://:pa/ss@host`) makes the parser see another
//! host and path, and its error would otherwise carry the whole string.

/// `scheme://user:password@host…` → `scheme://***@host…`; every item of a comma-separated list
/// (cluster seeds, Sentinels). Text without credentials comes back unchanged.
pub fn redact_url(text: &str) -> String {
    text.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    // The last `@` ends the user information: passwords may contain `/`, `@`, `?` or `#`.
    match url[start..].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_removed() {
        assert_eq!(redact_url("redis://:s3cr/et@redis:6379/0"), "redis://***@redis:6379/0");
        assert_eq!(redact_url("rediss://user:p@ss/w#rd@host:6380"), "rediss://***@host:6380");
        assert_eq!(redact_url("redis://a:1, redis://u:pw@b:2"), "redis://a:1, redis://***@b:2");
        assert_eq!(redact_url("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
