//! Image downloads: verified, decompressed, resumable.
