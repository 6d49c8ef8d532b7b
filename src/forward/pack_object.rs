//! What names and describes a pack's S3 object (packing, `s3_offload = "always"`): its
//! id, its compression, its key. The packer ([`super::pack`]) and the offloader
//! ([`super::offload`]) both use it; it uses neither.

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};

/// How a pack's S3 object is stored (`pack_compression` / `FORWARDER_PACK_COMPRESSION`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PackCompression {
    /// As it is.
    #[default]
    None,
    /// Gzip, with `Content-Encoding: gzip`.
    Gzip,
}

impl std::str::FromStr for PackCompression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(PackCompression::None),
            "gzip" => Ok(PackCompression::Gzip),
            other => Err(format!(
                "{other:?} is not a pack compression; expected none or gzip"
            )),
        }
    }
}

impl PackCompression {
    /// The setting's value, as written.
    pub fn as_str(self) -> &'static str {
        match self {
            PackCompression::None => "none",
            PackCompression::Gzip => "gzip",
        }
    }
}

/// A pack's id: the MD5 of its event ids, in hex. The same events give the same id, so
/// a resent pack is deduplicated by a FIFO queue and overwrites its own S3 object.
pub fn pack_id<'a>(event_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Md5::new();
    for id in event_ids {
        hasher.update(id.as_bytes());
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key of a pack (its [`pack_id`]) stored on `now`'s date:
/// `packs/{YYYY-MM-DD}/{pack_id}.ndjson`, `.gz` added when compressed.
pub fn pack_key(pack_id: &str, compression: PackCompression, now: DateTime<Utc>) -> String {
    let ext = match compression {
        PackCompression::None => "",
        PackCompression::Gzip => ".gz",
    };
    format!("packs/{}/{pack_id}.ndjson{ext}", now.format("%Y-%m-%d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keys_are_dated_today_and_named_by_their_events() {
        let now = DateTime::<Utc>::from_timestamp(1_764_547_200, 0).unwrap(); // 2025-12-01
        let id = pack_id(["a", "b"]);
        assert_eq!(
            pack_key(&id, PackCompression::Gzip, now),
            format!("packs/2025-12-01/{id}.ndjson.gz")
        );
        assert_eq!(
            pack_key(&id, PackCompression::None, now),
            format!("packs/2025-12-01/{id}.ndjson")
        );
    }

    #[test]
    fn the_pack_id_follows_its_events() {
        let a = pack_id(["1", "2"]);
        assert_eq!(a, pack_id(["1", "2"]));
        assert_ne!(a, pack_id(["2", "1"]));
        assert_ne!(a, pack_id(["12"]));
        assert_eq!(a.len(), 32);
    }
}
