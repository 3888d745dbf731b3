//! A node's persistent ed25519 identity: its libp2p peer id, the key that signs receipts and
//! announcements. Stored as the 32-byte secret in `<data dir>/node.key`, readable by its owner only.

use crate::error::{Result, SwarmError};
use hearth_wire::SigningKey;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use std::io::Write;
use std::path::Path;

/// Name of the key file inside a node's data directory.
pub const KEY_FILE: &str = "node.key";

/// The node's key pair, usable both by libp2p and by the wire crate's signers.
#[derive(Clone)]
pub struct NodeIdentity {
    secret: [u8; 32],
}

impl NodeIdentity {
    /// A fresh random identity (clients that need no persistent name).
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        let ed = libp2p::identity::ed25519::Keypair::generate();
        secret.copy_from_slice(ed.secret().as_ref());
        Self { secret }
    }

    /// Loads `<dir>/node.key`, creating it (mode 0600) on first use. A key file of the wrong
    /// size or readable by others is [`SwarmError::InvalidInput`]; file errors are
    /// [`SwarmError::Io`].
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        if path.exists() {
            let bytes = std::fs::read(&path)
                .map_err(|e| SwarmError::io(format!("reading {}", path.display()), e))?;
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                SwarmError::InvalidInput(format!(
                    "{} holds {} bytes, expected a 32-byte ed25519 secret",
                    path.display(),
                    bytes.len()
                ))
            })?;
            check_private(&path)?;
            return Ok(Self { secret });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| SwarmError::io(format!("creating {}", dir.display()), e))?;
        let id = Self::generate();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&path)
            .map_err(|e| SwarmError::io(format!("creating {}", path.display()), e))?;
        f.write_all(&id.secret)
            .map_err(|e| SwarmError::io(format!("writing {}", path.display()), e))?;
        Ok(id)
    }

    /// The identity as a libp2p key pair (for the transport and the DHT).
    pub fn keypair(&self) -> Keypair {
        let mut secret = self.secret;
        // A 32-byte secret is always a valid ed25519 secret key.
        Keypair::ed25519_from_bytes(&mut secret).expect("32-byte ed25519 secret")
    }

    /// The libp2p peer id derived from the public key.
    pub fn peer_id(&self) -> PeerId {
        self.keypair().public().to_peer_id()
    }

    /// The ed25519 key that signs receipts and announcements.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.secret)
    }

    /// The 32-byte ed25519 public key, as carried in receipts and announcements.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key().verifying_key().to_bytes()
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| SwarmError::io(format!("reading {}", path.display()), e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SwarmError::InvalidInput(format!(
            "{} is readable by others (mode {mode:o}); run `chmod 600` on it",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<()> {
    Ok(())
}

/// The ed25519 public key inside a peer id (hearth peer ids are always ed25519, inlined).
pub fn public_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(pk.try_into_ed25519().ok()?.to_bytes())
}

/// The peer id of an ed25519 public key.
pub fn peer_of_key(key: &[u8; 32]) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_with_private_mode_and_matches_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeIdentity::load_or_create(dir.path()).unwrap();
        let b = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(public_key_of(&a.peer_id()), Some(a.public_key()));
        assert_eq!(peer_of_key(&a.public_key()), Some(a.peer_id()));
        assert_ne!(NodeIdentity::generate().peer_id(), a.peer_id());
    }

    #[test]
    fn a_key_dir_that_cannot_be_created_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = NodeIdentity::load_or_create(&file.join("node"))
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::SwarmErrorKind::Io, "{err}");
    }

    #[test]
    fn world_readable_or_malformed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), [1u8; 5]).unwrap();
        let err = NodeIdentity::load_or_create(dir.path()).err().unwrap();
        assert_eq!(err.kind(), crate::SwarmErrorKind::InvalidInput, "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(KEY_FILE);
            std::fs::write(&path, [1u8; 32]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = NodeIdentity::load_or_create(dir.path()).err().unwrap();
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert_eq!(err.kind(), crate::SwarmErrorKind::InvalidInput);
        }
    }
}
