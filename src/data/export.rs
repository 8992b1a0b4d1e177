//! Export: records to JSON lines, a header first.

use std::collections::BTreeMap;

use super::{
    DataError,
    record::{Header, Record},
};
use crate::store::{DumpItem, StoreError};

/// How many records of each type were written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records per `type` (the header not counted).
    pub records: BTreeMap<&'static str, u64>,
}

impl ExportSummary {
    /// Records written, all types together.
    pub fn total(&self) -> u64 {
        self.records.values().sum()
    }
}

/// Writes `header` then one line per item, each a complete JSON object
/// followed by `\n`, handing every line to `emit` (which writes it to a file
/// or gathers lines into a backup chunk). Stops at the first store or output
/// error.
pub fn write_records(
    header: &Header,
    items: impl Iterator<Item = Result<DumpItem, StoreError>>,
    mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<ExportSummary, DataError> {
    let mut line = Vec::with_capacity(1024);
    let mut put = |record: &Record, line: &mut Vec<u8>| -> Result<(), DataError> {
        line.clear();
        serde_json::to_writer(&mut *line, record)
            .map_err(|e| DataError::Input(format!("cannot encode a record: {e}")))?;
        line.push(b'\n');
        emit(line).map_err(DataError::io("writing the export"))
    };
    put(&Record::Header(header.clone()), &mut line)?;
    let mut summary = ExportSummary::default();
    for item in items {
        let record = Record::from_item(&item?);
        put(&record, &mut line)?;
        *summary.records.entry(record.type_name()).or_default() += 1;
    }
    Ok(summary)
}
