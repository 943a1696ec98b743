//! The few pickle (protocol 2) opcodes a TorchScript archive's `data.pkl` and `constants.pkl`
//! need, written as PyTorch's own pickler writes them.
//!
//! TorchScript's unpickler is not Python's: it understands a fixed vocabulary of globals
//! (`__torch__.<Class>` objects, `torch._utils._rebuild_tensor_v2`, typed-list helpers) and
//! persistent ids naming tensor storages. No general-purpose pickle crate writes those (serde-pickle
//! has neither `GLOBAL` nor `BINPERSID`), and the subset is small, so it is written here.

/// Builds a pickle stream opcode by opcode; [`Pickler::finish`] appends `STOP`.
#[derive(Debug)]
pub(crate) struct Pickler {
    out: Vec<u8>,
}

/// Element type of a tensor storage, as PyTorch names the storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageKind {
    /// `torch.FloatStorage` (f32).
    Float,
    /// `torch.DoubleStorage` (f64).
    Double,
}

impl StorageKind {
    fn class_name(self) -> &'static str {
        match self {
            StorageKind::Float => "FloatStorage",
            StorageKind::Double => "DoubleStorage",
        }
    }
}

impl Pickler {
    /// A stream that starts with `PROTO 2`.
    pub(crate) fn new() -> Self {
        Self { out: vec![0x80, 2] }
    }

    /// The finished stream.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }

    /// `GLOBAL module name`: pushes a class or function.
    pub(crate) fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    /// Starts a TorchScript object of class `module.name`: `cls.__new__(cls)`, then the
    /// attribute dict, whose key/value pairs follow until [`Pickler::end_object`].
    pub(crate) fn begin_object(&mut self, module: &str, name: &str) {
        self.global(module, name);
        self.empty_tuple();
        self.newobj();
        self.empty_dict();
        self.mark();
    }

    /// Ends the attribute dict begun by [`Pickler::begin_object`] and sets it as the state.
    pub(crate) fn end_object(&mut self) {
        self.setitems();
        self.build();
    }

    pub(crate) fn mark(&mut self) {
        self.out.push(b'(');
    }

    /// `TUPLE`: the items since the last mark.
    pub(crate) fn tuple(&mut self) {
        self.out.push(b't');
    }

    pub(crate) fn empty_tuple(&mut self) {
        self.out.push(b')');
    }

    pub(crate) fn empty_list(&mut self) {
        self.out.push(b']');
    }

    pub(crate) fn empty_dict(&mut self) {
        self.out.push(b'}');
    }

    /// `APPENDS`: extends the list below the mark with the items since it.
    pub(crate) fn appends(&mut self) {
        self.out.push(b'e');
    }

    /// `SETITEMS`: adds the key/value pairs since the mark to the dict below it.
    pub(crate) fn setitems(&mut self) {
        self.out.push(b'u');
    }

    /// `NEWOBJ`: `cls.__new__(cls, *args)`.
    pub(crate) fn newobj(&mut self) {
        self.out.push(0x81);
    }

    /// `BUILD`: sets the object's state from the dict on top.
    pub(crate) fn build(&mut self) {
        self.out.push(b'b');
    }

    /// `REDUCE`: calls the callable below the argument tuple.
    pub(crate) fn reduce(&mut self) {
        self.out.push(b'R');
    }

    /// `BINPERSID`: the object on top is a persistent id (a storage reference).
    pub(crate) fn binpersid(&mut self) {
        self.out.push(b'Q');
    }

    pub(crate) fn bool(&mut self, value: bool) {
        self.out.push(if value { 0x88 } else { 0x89 });
    }

    /// The shortest integer opcode for `value`: `BININT1`, `BININT` or `LONG1`.
    pub(crate) fn int(&mut self, value: i64) {
        if (0..=0xff).contains(&value) {
            self.out.push(b'K');
            self.out.push(value as u8);
        } else if let Ok(v) = i32::try_from(value) {
            self.out.push(b'J');
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.push(0x8a);
            self.out.push(8);
            self.out.extend_from_slice(&value.to_le_bytes());
        }
    }

    /// `BINUNICODE`: a UTF-8 string.
    pub(crate) fn str(&mut self, value: &str) {
        self.out.push(b'X');
        // Strings here are names and labels from a schema: far below 4 GiB.
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(value.as_bytes());
    }

    /// A TorchScript `List[int]` (`torch.jit._pickle.build_intlist([...])`).
    pub(crate) fn int_list(&mut self, values: &[i64]) {
        self.global("torch.jit._pickle", "build_intlist");
        self.mark();
        self.empty_list();
        self.mark();
        values.iter().for_each(|&v| self.int(v));
        self.appends();
        self.tuple();
        self.reduce();
    }

    /// A TorchScript `List[str]`, tagged with its type as PyTorch does.
    pub(crate) fn str_list(&mut self, values: &[String]) {
        self.typed(|p| p.raw_str_list(values), "List[str]");
    }

    /// A TorchScript `List[List[str]]`.
    pub(crate) fn str_list_list(&mut self, values: &[Vec<String>]) {
        self.typed(
            |p| {
                p.empty_list();
                p.mark();
                values.iter().for_each(|inner| p.raw_str_list(inner));
                p.appends();
            },
            "List[List[str]]",
        );
    }

    fn raw_str_list(&mut self, values: &[String]) {
        self.empty_list();
        self.mark();
        values.iter().for_each(|v| self.str(v));
        self.appends();
    }

    /// `torch.jit._pickle.restore_type_tag(value, type)`.
    fn typed(&mut self, value: impl FnOnce(&mut Self), type_tag: &str) {
        self.global("torch.jit._pickle", "restore_type_tag");
        self.mark();
        value(self);
        self.str(type_tag);
        self.tuple();
        self.reduce();
    }

    /// A contiguous CPU tensor of `shape` over the whole storage record `data/<key>`:
    /// `torch._utils._rebuild_tensor_v2(storage, 0, shape, strides, requires_grad, OrderedDict())`.
    pub(crate) fn tensor(
        &mut self,
        key: &str,
        kind: StorageKind,
        shape: &[usize],
        requires_grad: bool,
    ) {
        let numel: usize = shape.iter().product();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.mark();
        // The storage: persistent id ('storage', torch.<Kind>Storage, key, 'cpu', numel).
        self.mark();
        self.str("storage");
        self.global("torch", kind.class_name());
        self.str(key);
        self.str("cpu");
        self.int(as_i64(numel));
        self.tuple();
        self.binpersid();
        self.int(0);
        self.mark();
        shape.iter().for_each(|&d| self.int(as_i64(d)));
        self.tuple();
        self.mark();
        for i in 0..shape.len() {
            self.int(as_i64(shape[i + 1..].iter().product()));
        }
        self.tuple();
        self.bool(requires_grad);
        self.global("collections", "OrderedDict");
        self.empty_tuple();
        self.reduce();
        self.tuple();
        self.reduce();
    }
}

/// Tensor sizes in this crate come from in-memory parameter vectors, so they fit in `i64`.
fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_the_shortest_opcode() {
        let mut p = Pickler::new();
        p.int(7);
        p.int(300);
        p.int(-1);
        p.int(1 << 40);
        let bytes = p.finish();
        assert_eq!(
            bytes,
            [
                &[0x80, 2, b'K', 7, b'J'][..],
                &300i32.to_le_bytes(),
                b"J",
                &(-1i32).to_le_bytes(),
                &[0x8a, 8],
                &(1i64 << 40).to_le_bytes(),
                b".",
            ]
            .concat()
        );
    }

    #[test]
    fn strings_are_length_prefixed_utf8() {
        let mut p = Pickler::new();
        p.str("Contract=Two year");
        let bytes = p.finish();
        assert_eq!(&bytes[2..3], b"X");
        assert_eq!(&bytes[3..7], &17u32.to_le_bytes());
        assert_eq!(&bytes[7..24], b"Contract=Two year");
    }
}
