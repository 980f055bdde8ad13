//! `-u name|uid[:group|gid]` resolved against the container's own /etc/passwd and /etc/group,
//! the way runc and Docker do it. init runs inside the container's mount namespace, so it reads
//! the container's files, never the host's.

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group in /etc/group that lists the user by name.
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("invalid user specification {0:?}")]
    Invalid(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5] })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
        Some(GroupEntry { name: f[0], gid: f[2].parse().ok()?, members })
    })
}

/// Resolves `spec` (empty = root) with the given passwd and group file contents.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if grp.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let user = if user.is_empty() { "0" } else { user };

    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => {
            Some(passwd_entries(passwd).find(|e| e.name == user).ok_or_else(|| UserError::NoUser(user.to_string()))?)
        }
    };
    // A numeric uid with no passwd entry is allowed, as in Docker: gid 0, home "/".
    let (uid, mut gid, home, name) = match (&entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), Some(e.name)),
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(UserError::NoUser(user.to_string())),
    };

    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        };
    }

    let mut groups: Vec<u32> = match name {
        Some(name) => group_entries(group).filter(|e| e.members.contains(&name)).map(|e| e.gid).collect(),
        None => Vec::new(),
    };
    groups.sort_unstable();
    groups.dedup();
    Ok(Identity { uid, gid, groups, home: if home.is_empty() { "/".into() } else { home } })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
                          # comment\n\
                          alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
                          broken line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,alice\nalice:x:1000:\nstaff:x:50:alice\n";

    #[test]
    fn empty_is_root() {
        let id = resolve("", PASSWD, GROUP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/root"));
        assert_eq!(id.groups, vec![10]);
    }

    #[test]
    fn by_name_and_group_name() {
        let id = resolve("alice:staff", PASSWD, GROUP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((id.uid, id.gid), (1000, 50));
        assert_eq!(id.groups, vec![10, 50]);
        assert_eq!(id.home, "/home/alice");
    }

    #[test]
    fn numeric_without_entry() {
        let id = resolve("4242:4343", PASSWD, GROUP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((id.uid, id.gid, id.home.as_str()), (4242, 4343, "/"));
        assert!(id.groups.is_empty());
        let id = resolve("1000", PASSWD, GROUP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((id.uid, id.gid), (1000, 1000));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        assert_eq!(resolve("bob", PASSWD, GROUP), Err(UserError::NoUser("bob".into())));
        assert_eq!(resolve("alice:nogroup", PASSWD, GROUP), Err(UserError::NoGroup("nogroup".into())));
        assert_eq!(resolve("bob", "", ""), Err(UserError::NoUser("bob".into())));
        assert!(matches!(resolve("alice:", PASSWD, GROUP), Err(UserError::Invalid(_))));
        assert_eq!(
            UserError::NoUser("bob".into()).to_string(),
            "unable to find user bob: no matching entries in passwd file"
        );
    }
}
