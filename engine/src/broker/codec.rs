//! Section encoding shared by the broker members.
//!
//! A member's section is a [`RecordsEncoder`] stream of `(key, value)`
//! records in key order, taken from a clone of the member's map. Nested maps
//! (a topic's config, a group's offsets) are written as sequences of pairs,
//! also in key order. Readers require keys to be strictly increasing, at
//! both levels: that refuses duplicates and makes the encoding canonical (one
//! state, one byte string), so two snapshots of one state compare equal.

use crate::machine::{decode_records, RecordsEncoder, RestoreError, SectionEncoder};
use crate::mux::Member;
use imbl::OrdMap;
use serde::{de::DeserializeOwned, Serialize};

/// The encoder of a member's map: O(1) to build (the clone shares
/// structure), and it walks the clone, so later changes to the live map do
/// not show in the section.
pub(crate) fn freeze_map<K, V>(map: &OrdMap<K, V>) -> Box<dyn SectionEncoder>
where
    K: Ord + Clone + Serialize + 'static,
    V: Clone + Serialize + 'static,
{
    let image = map.clone();
    Box::new(RecordsEncoder::new(image.len(), image.into_iter()))
}

/// Decodes a section written by [`freeze_map`]. `check` validates each
/// record; more than `records_max` records is refused.
pub(crate) fn restore_map<K, V>(
    bytes: &[u8],
    records_max: usize,
    mut check: impl FnMut(&K, &V) -> Result<(), String>,
) -> Result<OrdMap<K, V>, RestoreError>
where
    K: Ord + Clone + DeserializeOwned,
    V: Clone + DeserializeOwned,
{
    let mut map = OrdMap::new();
    decode_records(bytes, |(key, value): (K, V)| {
        if map.len() >= records_max {
            return Err(inconsistent(format!("more than {records_max} records")));
        }
        if map.get_max().is_some_and(|(last, _)| *last >= key) {
            return Err(inconsistent("records out of key order".to_owned()));
        }
        check(&key, &value).map_err(inconsistent)?;
        map.insert(key, value);
        Ok(())
    })?;
    Ok(map)
}

/// An inconsistency whose section [`RestoreError::in_section`] fills in.
pub(crate) fn inconsistent(reason: String) -> RestoreError {
    RestoreError::Inconsistent {
        section: String::new(),
        reason,
    }
}

/// Serde for a nested [`OrdMap`]: a sequence of `(key, value)` pairs with
/// strictly increasing keys. Use with `#[serde(with = "codec::ordmap_seq")]`.
pub(crate) mod ordmap_seq {
    use imbl::OrdMap;
    use serde::{
        de::{Error, SeqAccess, Visitor},
        ser::SerializeSeq,
        Deserialize, Deserializer, Serialize, Serializer,
    };
    use std::{fmt, marker::PhantomData};

    /// The longest nested map any member holds; each member checks its own,
    /// tighter limit afterwards. This one only bounds what hostile bytes can
    /// make a decoder build.
    const NESTED_ENTRIES_MAX: usize = {
        let limits = [
            crate::broker::PARTITIONS_MAX as usize,
            crate::broker::CONFIG_ENTRIES_MAX,
            crate::broker::GROUP_MEMBERS_MAX,
        ];
        let mut max = 0;
        let mut i = 0;
        while i < limits.len() {
            if limits[i] > max {
                max = limits[i];
            }
            i += 1;
        }
        max
    };

    pub(crate) fn serialize<K, V, S>(map: &OrdMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Ord + Clone + Serialize,
        V: Clone + Serialize,
        S: Serializer,
    {
        let mut seq = serializer.serialize_seq(Some(map.len()))?;
        for pair in map.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, K, V, D>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
    where
        K: Ord + Clone + Deserialize<'de>,
        V: Clone + Deserialize<'de>,
        D: Deserializer<'de>,
    {
        deserializer.deserialize_seq(Pairs(PhantomData))
    }

    struct Pairs<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for Pairs<K, V>
    where
        K: Ord + Clone + Deserialize<'de>,
        V: Clone + Deserialize<'de>,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of (key, value) pairs in strictly increasing key order")
        }

        // No preallocation from the length prefix: it is untrusted, and an
        // `OrdMap` grows node by node anyway.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = seq.next_element::<(K, V)>()? {
                if map.len() >= NESTED_ENTRIES_MAX {
                    return Err(A::Error::custom("nested map too long"));
                }
                if map.get_max().is_some_and(|(last, _)| *last >= key) {
                    return Err(A::Error::custom("nested map keys out of order"));
                }
                map.insert(key, value);
            }
            Ok(map)
        }
    }
}

/// Refuses a version `M` does not read (the snapshot loader checks this
/// too, but a member can be restored directly).
pub(crate) fn check_version<M: Member>(version: u32) -> Result<(), RestoreError> {
    if M::READABLE.contains(&version) {
        Ok(())
    } else {
        Err(RestoreError::UnsupportedVersion {
            name: M::SECTION.to_owned(),
            version,
            readable: M::READABLE,
        })
    }
}

/// Runs restore's checks over a live map (for [`super::Metadata::check`]).
pub(crate) fn check_map<M: Member, K: Ord + Clone, V: Clone>(
    map: &OrdMap<K, V>,
    records_max: usize,
    mut check: impl FnMut(&K, &V) -> Result<(), String>,
) -> Result<(), RestoreError> {
    let result = if map.len() > records_max {
        Err(format!("more than {records_max} records"))
    } else {
        map.iter().try_for_each(|(key, value)| check(key, value))
    };
    result.map_err(|reason| inconsistent(reason).in_section(M::SECTION))
}
