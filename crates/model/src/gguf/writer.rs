//! Writing GGUF version 3 files: metadata key/values, tensor infos, then the aligned data section.
//!
//! Tensors are given as closures producing their bytes, called one at a time while the data
//! section is written, so converting a large model never holds more than one tensor's encoding.

use std::io::Write;
use std::path::Path;

use super::reader::{MetaValue, DEFAULT_ALIGNMENT};
use super::types::GgmlType;
use crate::error::{ModelError, Result};

type Produce<'a> = Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>;

struct PlannedTensor<'a> {
    name: String,
    /// Innermost first, as in the file.
    dims: Vec<usize>,
    ty: GgmlType,
    n_bytes: usize,
    produce: Produce<'a>,
}

/// A GGUF file being assembled.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PlannedTensor<'a>>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) -> std::result::Result<(), String> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(items) => {
            let elem = items
                .first()
                .map_or(MetaValue::U8(0).type_id(), |i| i.type_id());
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.type_id() != elem {
                    return Err("an array mixes value types".into());
                }
                put_value(out, item)?;
            }
        }
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
    Ok(())
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key/value (keys are written in the order added).
    pub fn add(&mut self, key: &str, value: MetaValue) {
        self.metadata.push((key.to_string(), value));
    }

    /// Adds a tensor of `dims` (innermost first) and type `ty`; `produce` encodes it when the
    /// data section is written and must return exactly the bytes the shape and type call for.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: Vec<usize>,
        ty: GgmlType,
        produce: impl FnOnce() -> Result<Vec<u8>> + 'a,
    ) -> Result<()> {
        let bad = |message: String| ModelError::InvalidOption(format!("tensor {name}: {message}"));
        let first = *dims.first().ok_or_else(|| bad("no dimensions".into()))?;
        let row_bytes = ty
            .row_bytes(first)
            .ok_or_else(|| bad(format!("rows of {first} values are not whole {ty} blocks")))?;
        let n_bytes = dims[1..].iter().product::<usize>() * row_bytes;
        self.tensors.push(PlannedTensor {
            name: name.to_string(),
            dims,
            ty,
            n_bytes,
            produce: Box::new(produce),
        });
        Ok(())
    }

    /// Header, metadata and tensor infos, padded to where the data section starts.
    fn header(&self) -> std::result::Result<Vec<u8>, String> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value).map_err(|e| format!("metadata {key}: {e}"))?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += t.n_bytes.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        out.resize(out.len().div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT, 0);
        Ok(out)
    }

    /// Writes the whole file to `out`; `origin` names the destination in errors.
    pub fn write(self, out: &mut impl Write, origin: &Path) -> Result<()> {
        let io = |e| ModelError::io(origin, e);
        let header = self
            .header()
            .map_err(|m| ModelError::InvalidOption(format!("{}: {m}", origin.display())))?;
        out.write_all(&header).map_err(io)?;
        for t in self.tensors {
            let bytes = (t.produce)()?;
            if bytes.len() != t.n_bytes {
                return Err(ModelError::InvalidOption(format!(
                    "tensor {}: encoded to {} bytes, {} expected",
                    t.name,
                    bytes.len(),
                    t.n_bytes
                )));
            }
            out.write_all(&bytes).map_err(io)?;
            let pad = bytes.len().div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - bytes.len();
            out.write_all(&[0u8; DEFAULT_ALIGNMENT][..pad])
                .map_err(io)?;
        }
        out.flush().map_err(io)
    }

    /// Writes the file to `path` (through a temporary file renamed into place when complete).
    pub fn write_file(self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("gguf.partial");
        let file = std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let result = self.write(&mut out, path);
        drop(out);
        match result {
            Ok(()) => std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e)),
            Err(e) => {
                std::fs::remove_file(&tmp).ok();
                Err(e)
            }
        }
    }

    /// The whole file in memory (tests, small models).
    pub fn to_bytes(self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write(&mut out, Path::new("<memory>"))?;
        Ok(out)
    }
}
