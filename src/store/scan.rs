//! Paged range scans shared by the listings.

use sled::IVec;

use super::{Result, Store};

/// One page of a prefix scan: the entries, and the cursor (the key tail
/// after the prefix) of the last one when there may be more.
pub(crate) type ScanPage = (Vec<(IVec, IVec)>, Option<Vec<u8>>);

impl Store {
    /// At most `limit` entries under `prefix`, in key order, strictly after
    /// the cursor `after` (a key tail from a previous page).
    pub(crate) fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage> {
        let start = match after {
            // Resume strictly after the cursor: append a zero byte.
            Some(cursor) => [prefix, cursor, &[0]].concat(),
            None => prefix.to_vec(),
        };
        let mut found = Vec::new();
        for item in self.db.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            if found.len() == limit {
                let next = found
                    .last()
                    .map(|(k, _): &(IVec, IVec)| k[prefix.len()..].to_vec());
                return Ok((found, next));
            }
            found.push((key, value));
        }
        Ok((found, None))
    }
}
