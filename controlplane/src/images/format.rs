//! Istio's Wasm image formats: what `wasmesh plugin push` writes and what a pull reads.
//!
//! - The *oci* variant: an OCI manifest whose config has media type
//!   [`WASM_CONFIG`] and whose layer of media type [`WASM_LAYER`] is the module itself
//!   (titled `plugin.wasm`, so ORAS clients pull it as that file).
//! - The *compat* variant: a container image whose last layer is a tar (usually gzipped) with
//!   `plugin.wasm` in it, with Docker's or OCI's layer media types.

use std::io::Read;

use thiserror::Error;

/// The layer holding the module in the *oci* variant.
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The config of an *oci* variant image.
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The CNCF Wasm artifact layer (wkg, oci-client): also a bare module.
const CNCF_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The file a *compat* layer holds the module in.
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// The annotation ORAS names a layer's file by.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// The largest module a pull accepts: plugins are kilobytes to a few megabytes.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

const TAR_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Why an image holds no usable module.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "not a Wasm plugin image: no layer of media type {WASM_LAYER} and the last layer \
         ({0}) is not a tar layer holding {PLUGIN_FILE}"
    )]
    NoWasmLayer(String),
    #[error("the image has no layers")]
    NoLayers,
    #[error("the image's tar layer holds no {PLUGIN_FILE}")]
    NoPluginFile,
    #[error("the image's layer is not a readable tar: {0}")]
    BadTar(String),
    #[error("the image's {PLUGIN_FILE} is not a Wasm module (no \\0asm header)")]
    NotWasm,
    #[error("the image's module is larger than {} MiB", MAX_MODULE_BYTES >> 20)]
    TooLarge,
}

/// How the module sits in an image's layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// The layer is the module.
    Bare,
    /// The layer is a tar (gzipped when `gzip`) with `plugin.wasm` in it.
    Tar { gzip: bool },
}

/// Picks the layer holding the module from an image's layer media types (in manifest order):
/// an *oci* variant's Wasm layer, else the *compat* variant's last layer.
pub fn module_layer(media_types: &[&str]) -> Result<(usize, Packing), FormatError> {
    if let Some(i) = media_types
        .iter()
        .position(|m| *m == WASM_LAYER || *m == CNCF_WASM_LAYER)
    {
        return Ok((i, Packing::Bare));
    }
    let last = media_types
        .len()
        .checked_sub(1)
        .ok_or(FormatError::NoLayers)?;
    let media_type = media_types[last];
    if TAR_LAYERS.contains(&media_type) {
        return Ok((
            last,
            Packing::Tar {
                gzip: media_type.ends_with("gzip"),
            },
        ));
    }
    Err(FormatError::NoWasmLayer(media_type.to_owned()))
}

/// The module in a layer's bytes, checked to be Wasm.
pub fn unpack(layer: &[u8], packing: Packing) -> Result<Vec<u8>, FormatError> {
    let module = match packing {
        Packing::Bare => layer.to_vec(),
        Packing::Tar { gzip: true } => from_tar(flate2::read::GzDecoder::new(layer))?,
        Packing::Tar { gzip: false } => from_tar(layer)?,
    };
    if module.len() > MAX_MODULE_BYTES {
        return Err(FormatError::TooLarge);
    }
    if !module.starts_with(b"\0asm") {
        return Err(FormatError::NotWasm);
    }
    Ok(module)
}

fn from_tar(reader: impl Read) -> Result<Vec<u8>, FormatError> {
    let bad = |e: std::io::Error| FormatError::BadTar(e.to_string());
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?;
        if path.file_name().is_some_and(|n| n == PLUGIN_FILE) {
            let mut module = Vec::new();
            entry
                .take(MAX_MODULE_BYTES as u64 + 1)
                .read_to_end(&mut module)
                .map_err(bad)?;
            return Ok(module);
        }
    }
    Err(FormatError::NoPluginFile)
}

/// The config blob of an image `wasmesh plugin push` writes.
pub fn config_json() -> Vec<u8> {
    br#"{"type":"envoy_proxy","abiVersions":["proxy_abi_version_0_2_1"]}"#.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn tar_with(name: &str, content: &[u8], gzip: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, content).unwrap();
        let tar = builder.into_inner().unwrap();
        if !gzip {
            return tar;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn the_oci_variant_is_its_wasm_layer() {
        let types = ["application/vnd.oci.image.layer.v1.tar+gzip", WASM_LAYER];
        assert_eq!(module_layer(&types), Ok((1, Packing::Bare)));
        assert_eq!(unpack(MODULE, Packing::Bare).unwrap(), MODULE);
    }

    #[test]
    fn the_compat_variant_is_plugin_wasm_in_the_last_tar_layer() {
        for (media_type, gzip) in [
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", true),
            ("application/vnd.oci.image.layer.v1.tar+gzip", true),
            ("application/vnd.oci.image.layer.v1.tar", false),
        ] {
            let (i, packing) = module_layer(&["application/x-other", media_type]).unwrap();
            assert_eq!((i, packing), (1, Packing::Tar { gzip }));
            let layer = tar_with("./plugin.wasm", MODULE, gzip);
            assert_eq!(unpack(&layer, packing).unwrap(), MODULE);
        }
    }

    #[test]
    fn images_without_a_module_are_refused_with_the_reason() {
        assert_eq!(module_layer(&[]), Err(FormatError::NoLayers));
        assert!(matches!(
            module_layer(&["application/json"]),
            Err(FormatError::NoWasmLayer(m)) if m == "application/json"
        ));
        let other = tar_with("app.bin", MODULE, true);
        assert_eq!(
            unpack(&other, Packing::Tar { gzip: true }),
            Err(FormatError::NoPluginFile)
        );
        assert_eq!(
            unpack(b"not wasm", Packing::Bare),
            Err(FormatError::NotWasm)
        );
        assert!(matches!(
            unpack(b"garbage", Packing::Tar { gzip: true }),
            Err(FormatError::BadTar(_))
        ));
    }
}
