//! Checks that the Secret a `Lumigo` resource names holds a well-formed token, with messages
//! that say what to fix.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

/// A Lumigo token: `t_` and 21 hexadecimal digits, nothing around it.
pub fn is_well_formed(token: &str) -> bool {
    token.len() == 23
        && token.starts_with("t_")
        && token[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a Secret cannot provide the token, in words a person can act on.
pub fn check_secret_data(
    secret_name: &str,
    key: &str,
    data: Option<&BTreeMap<String, ByteString>>,
) -> Result<(), String> {
    let Some(value) = data.and_then(|data| data.get(key)) else {
        let keys: Vec<&str> = data
            .map(|d| d.keys().map(String::as_str).collect())
            .unwrap_or_default();
        return Err(format!(
            "the Secret {secret_name} has no key {key:?} (it has {}); set \
             spec.lumigoToken.secretRef.key or add the key",
            if keys.is_empty() {
                "no keys".to_owned()
            } else {
                keys.join(", ")
            }
        ));
    };
    let token = std::str::from_utf8(&value.0)
        .unwrap_or_default()
        .trim_end_matches('\n');
    if !is_well_formed(token) {
        return Err(format!(
            "the value of key {key:?} in the Secret {secret_name} is not a Lumigo token: it must \
             be \"t_\" followed by 21 hexadecimal digits (find it in Lumigo under Settings → \
             Tracing)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_anchored_tokens_are_well_formed() {
        assert!(is_well_formed("t_0123456789abcdef01234"));
        assert!(is_well_formed("t_0123456789ABCDEF01234"));
        for bad in [
            "t_0123456789abcdef0123",
            "t_0123456789abcdef012345",
            "x_0123456789abcdef01234",
            "t_0123456789abcdefg1234",
            " t_0123456789abcdef01234",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let mut data = BTreeMap::new();
        data.insert(
            "tok".to_owned(),
            ByteString(b"t_0123456789abcdef01234\n".to_vec()),
        );
        assert!(
            check_secret_data("s", "tok", Some(&data)).is_ok(),
            "a trailing newline from `echo` is fine"
        );
        let missing = check_secret_data("s", "token", Some(&data)).unwrap_err();
        assert!(
            missing.contains("no key \"token\"") && missing.contains("tok"),
            "{missing}"
        );
        data.insert("token".to_owned(), ByteString(b"secret".to_vec()));
        assert!(check_secret_data("s", "token", Some(&data))
            .unwrap_err()
            .contains("not a Lumigo token"));
        assert!(check_secret_data("s", "token", None)
            .unwrap_err()
            .contains("no keys"));
    }
}
