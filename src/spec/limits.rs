//! Bounds on what untrusted input may ask for: config sizes, durations,
//! instances per source, and the environment names that config may never
//! set. Every bound is enforced where the input enters (API, desired file,
//! manifest, stored state) and named in the error that refuses it.
//!
//! Pure constants and checks; no I/O.

use std::time::Duration;

/// Most keys in one instance's config.
pub const MAX_CONFIG_KEYS: usize = 64;
/// Most bytes in one config value.
pub const MAX_CONFIG_VALUE_BYTES: usize = 8 << 10;
/// Most bytes in one instance's config, keys and values together (far
/// below the kernel's limits on an exec's environment).
pub const MAX_CONFIG_TOTAL_BYTES: usize = 64 << 10;
/// Longest grace period a declaration may ask for.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_hours(24);
/// Longest duration a manifest may set (probe interval, probe timeout,
/// start-up timeout).
pub const MAX_MANIFEST_DURATION: Duration = Duration::from_hours(24);
/// Most instances one source (the API, or one desired file) may declare.
pub const MAX_INSTANCES_PER_SOURCE: usize = 10_000;

/// Environment names (exact) that config may never set: each makes the
/// dynamic loader, libc, a shell or an interpreter load or run code of the
/// caller's choosing, or changes which programs a pattern runs.
const FORBIDDEN_NAMES: &[(&str, &str)] = &[
    ("PATH", "chooses which programs the pattern runs"),
    ("GCONV_PATH", "makes glibc load code"),
    ("GLIBC_TUNABLES", "changes glibc's allocator and loader"),
    ("HOSTALIASES", "changes name resolution"),
    ("LOCPATH", "makes glibc load locale files"),
    ("NLSPATH", "makes glibc load message catalogs"),
    ("RESOLV_HOST_CONF", "changes name resolution"),
    ("BASH_ENV", "makes bash run a file at start-up"),
    ("ENV", "makes sh run a file at start-up"),
    ("SHELLOPTS", "changes how shells run"),
    ("BASHOPTS", "changes how shells run"),
    ("PS4", "makes shells run code when tracing"),
    ("IFS", "changes how shells split words"),
    ("CDPATH", "changes how shells find directories"),
    ("GLOBIGNORE", "changes how shells expand names"),
    ("PROMPT_COMMAND", "makes shells run code"),
    ("NODE_OPTIONS", "makes node load code"),
    ("RUBYOPT", "makes ruby load code"),
    ("RUBYLIB", "makes ruby load code"),
    ("PERLLIB", "makes perl load code"),
    ("JAVA_TOOL_OPTIONS", "makes the JVM load agents"),
    ("_JAVA_OPTIONS", "makes the JVM load agents"),
    ("JDK_JAVA_OPTIONS", "makes the JVM load agents"),
    ("CLASSPATH", "makes the JVM load classes"),
    ("OPENSSL_CONF", "makes OpenSSL load engines"),
    ("OPENSSL_ENGINES", "makes OpenSSL load engines"),
    ("PHPRC", "makes PHP load a configuration"),
    ("PHP_INI_SCAN_DIR", "makes PHP load configurations"),
    ("TCLLIBPATH", "makes tcl load code"),
    ("GTK_MODULES", "makes GTK load code"),
    ("GIO_MODULE_DIR", "makes GLib load code"),
    ("GDK_PIXBUF_MODULE_FILE", "makes GDK load code"),
    ("KRB5_CONFIG", "makes Kerberos load plugins"),
];

/// Environment name prefixes that config may never set.
const FORBIDDEN_PREFIXES: &[(&str, &str)] = &[
    ("LD_", "reaches the dynamic loader"),
    ("DYLD_", "reaches the dynamic loader"),
    ("MALLOC_", "changes glibc's allocator"),
    ("PYTHON", "makes python load code"),
    ("PERL5", "makes perl load code"),
    ("NODE_", "makes node load code"),
    ("RUBY", "makes ruby load code"),
    ("LUA_", "makes lua run code"),
    ("BASH_FUNC_", "defines shell functions"),
    ("GIT_", "makes git run programs"),
];

/// Why config may not set `key`, or `None` when it may.
pub fn forbidden_config_key(key: &str) -> Option<&'static str> {
    FORBIDDEN_NAMES
        .iter()
        .find(|(name, _)| *name == key)
        .or_else(|| {
            FORBIDDEN_PREFIXES
                .iter()
                .find(|(prefix, _)| key.starts_with(prefix))
        })
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_and_interpreter_hooks_are_forbidden() {
        for key in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "GCONV_PATH",
            "BASH_ENV",
            "ENV",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "NODE_OPTIONS",
            "PERL5OPT",
            "PERL5LIB",
            "RUBYOPT",
            "GLIBC_TUNABLES",
            "PATH",
        ] {
            assert!(forbidden_config_key(key).is_some(), "{key} must be refused");
        }
    }

    #[test]
    fn ordinary_names_are_allowed() {
        for key in ["LOG_LEVEL", "ENVIRONMENT", "MY_PATH", "LDAP_URL", "NODE"] {
            assert_eq!(forbidden_config_key(key), None, "{key} must be allowed");
        }
    }
}
