//! Whom a pattern's processes run as: the manifest's `user:` and `group:`
//! as written ([`Account`]), and the ids they stand for once looked up
//! ([`Ids`], filled in by the catalog, which reads the user database).
//!
//! Pure: parsing and checking the text only; no look-up happens here.

use std::path::PathBuf;

/// Longest account name accepted (NSS allows more than `useradd`'s 32).
pub const MAX_ACCOUNT_NAME: usize = 256;

/// A user or group as a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// A name, looked up in the user or group database.
    Name(String),
    /// A numeric id, used as is.
    Id(u32),
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Account::Name(n) => write!(f, "{n:?}"),
            Account::Id(id) => write!(f, "{id}"),
        }
    }
}

/// Why a `user:` or `group:` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Empty or blank.
    #[error("must not be empty")]
    Empty,
    /// Digits that are no usable id (`4294967295` is `(uid_t) -1`, which
    /// the set*id calls read as "leave unchanged").
    #[error("{0:?} is not an id from 0 to 4294967294")]
    BadId(String),
    /// A name no account database can hold.
    #[error(
        "{0:?} is not an account name (at most 256 characters, no whitespace, ':', '/' or control characters)"
    )]
    BadName(String),
}

impl Account {
    /// Parses a manifest value: all digits is an id, anything else a name.
    ///
    /// # Errors
    ///
    /// An empty value, an id out of range, or a name with characters no
    /// passwd or group entry can hold.
    pub fn parse(text: &str) -> Result<Account, AccountError> {
        if text.is_empty() {
            return Err(AccountError::Empty);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(id) if id != u32::MAX => Ok(Account::Id(id)),
                _ => Err(AccountError::BadId(text.to_string())),
            };
        }
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == ':' || c == '/';
        if text.len() > MAX_ACCOUNT_NAME || text.chars().any(bad) {
            return Err(AccountError::BadName(text.to_string()));
        }
        Ok(Account::Name(text.to_string()))
    }
}

/// The ids `user:` and `group:` stand for, as the user and group databases
/// gave them when the catalog loaded the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// The user id.
    pub uid: u32,
    /// The group id: `group:`, else the user's primary group.
    pub gid: u32,
    /// The user's name, when the passwd database has the uid: its
    /// supplementary groups are looked up by it, and it becomes `USER` and
    /// `LOGNAME`.
    pub name: Option<String>,
    /// The user's home directory, when the passwd database has the uid.
    pub home: Option<PathBuf>,
}

/// Whom a pattern's processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// `user:` as written.
    pub user: Account,
    /// `group:` as written; `None`: the user's primary group.
    pub group: Option<Account>,
    /// What they resolve to; `None` until the catalog has looked them up
    /// (a pattern with unresolved ids is never started).
    pub ids: Option<Ids>,
}

impl RunAs {
    /// How messages name the account: `user "nobody" (uid 65534, gid
    /// 65534)`, or `user "nobody"` before the look-up.
    pub fn describe(&self) -> String {
        match &self.ids {
            Some(ids) => format!("user {} (uid {}, gid {})", self.user, ids.uid, ids.gid),
            None => format!("user {}", self.user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_ids_and_the_rest_names() {
        assert_eq!(Account::parse("65534"), Ok(Account::Id(65534)));
        assert_eq!(Account::parse("0"), Ok(Account::Id(0)));
        assert_eq!(Account::parse("nobody"), Ok(Account::Name("nobody".into())));
        assert_eq!(Account::parse("svc-1$"), Ok(Account::Name("svc-1$".into())));
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(Account::parse(""), Err(AccountError::Empty));
        // (uid_t) -1 means "unchanged" to setresuid: never an id.
        assert!(matches!(
            Account::parse("4294967295"),
            Err(AccountError::BadId(_))
        ));
        assert!(matches!(
            Account::parse("99999999999"),
            Err(AccountError::BadId(_))
        ));
        for bad in ["no body", "a:b", "../x", "a\0b", "a\nb", &"x".repeat(257)] {
            assert!(
                matches!(Account::parse(bad), Err(AccountError::BadName(_))),
                "{bad:?}"
            );
        }
    }
}
