//! Who makes a call: the identity the transport vouches for (the peer
//! credentials of a Unix socket, the client certificate of mTLS), or none
//! (plain TCP). Authorization decides on it; events and the log name it.

use std::fmt;
use std::net::SocketAddr;

use tonic::Request;

/// A caller as the transport knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Identity {
    /// A peer on the Unix socket (from `SO_PEERCRED`).
    Unix {
        /// Its user id.
        uid: u32,
        /// Its group id.
        gid: u32,
        /// Its pid, when known.
        pid: Option<i32>,
    },
    /// A client that presented a verified certificate (mTLS).
    Cert {
        /// The subject's common name, if any.
        cn: Option<String>,
        /// Its subject alternative names (DNS names, URIs, emails, IPs as text).
        sans: Vec<String>,
        /// Its address.
        addr: Option<SocketAddr>,
    },
    /// A TCP peer without a certificate: an address, no identity.
    Tcp {
        /// Its address.
        addr: Option<SocketAddr>,
    },
    /// Nothing is known of the caller.
    #[default]
    Unknown,
}

impl Identity {
    /// Whether the transport vouches for who the caller is.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Identity::Unix { .. } | Identity::Cert { .. })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Unix { uid, gid, pid } => {
                write!(f, "uid {uid} gid {gid}")?;
                if let Some(pid) = pid {
                    write!(f, " pid {pid}")?;
                }
                Ok(())
            }
            Identity::Cert { cn, sans, .. } => match (cn, sans.first()) {
                (Some(cn), _) => write!(f, "cert CN={cn}"),
                (None, Some(san)) => write!(f, "cert SAN={san}"),
                (None, None) => write!(f, "cert without a name"),
            },
            Identity::Tcp { addr: Some(a) } => write!(f, "api {a}"),
            Identity::Tcp { addr: None } | Identity::Unknown => write!(f, "api"),
        }
    }
}

/// The identity of the caller of `request`: one a layer put in the
/// request's extensions, else what the connection says.
pub fn identity<T>(request: &Request<T>) -> Identity {
    if let Some(id) = request.extensions().get::<Identity>() {
        return id.clone();
    }
    match request.remote_addr() {
        Some(addr) => Identity::Tcp { addr: Some(addr) },
        None => Identity::Unknown,
    }
}
