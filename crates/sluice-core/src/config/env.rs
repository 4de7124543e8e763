//! `${VAR}` and `${VAR:-default}` interpolation in configuration strings.

/// Replaces every `${VAR}` / `${VAR:-default}` in `s`. `$$` is a literal `$`.
/// Returns the name of the first variable that is unset and has no default.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err("unterminated '${'".to_owned());
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name '{name}'"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable '{name}' is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "KEY" => Some("sk-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_and_defaults() {
        assert_eq!(interpolate("${KEY}", &env).unwrap(), "sk-1");
        assert_eq!(interpolate("a-${KEY}-b", &env).unwrap(), "a-sk-1-b");
        assert_eq!(interpolate("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("$$5 and $x", &env).unwrap(), "$5 and $x");
        assert_eq!(interpolate("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn reports_unset_and_bad_syntax() {
        assert!(interpolate("${NOPE}", &env).unwrap_err().contains("'NOPE'"));
        assert!(
            interpolate("${KEY", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(interpolate("${a b}", &env).unwrap_err().contains("invalid"));
    }
}
