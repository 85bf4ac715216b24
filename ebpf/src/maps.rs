//! Taking typed maps out of a loaded object.

use aya::Ebpf;

use crate::error::Error;

/// Moves map `name` out of `bpf` as a typed map (`HashMap`, `Array`, …).
pub(crate) fn take<T>(bpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf
        .take_map(name)
        .ok_or(Error::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| Error::Map { map: name, source })
}
