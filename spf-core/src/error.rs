//! `Error`: what can go wrong when reserving or changing a region, with
//! messages that say what to do about it.

use crate::sys::Errno;
use core::fmt;

/// Why a region could not be reserved or changed, or why spf could not
/// start. `Display` says what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The address-space reservation has no free range of this size.
    ReservationExhausted {
        /// Bytes asked for.
        requested: usize,
        /// The largest free range left, in bytes.
        free: usize,
        /// The zone's whole reservation, in bytes (`SPF_RESERVE`).
        reserved: usize,
    },
    /// Every region descriptor is in use.
    TooManyRegions {
        /// `SPF_MAX_REGIONS`.
        limit: usize,
    },
    /// A region length of zero, or one too large to represent.
    BadSize {
        /// The length asked for.
        len: usize,
    },
    /// A granule that is not a power of two from 4 KiB to 2 MiB.
    BadGranule {
        /// The granule asked for, in bytes.
        granule: usize,
    },
    /// An alignment that is not a power of two, or larger than the
    /// reservation.
    BadAlignment {
        /// The alignment asked for, in bytes.
        align: usize,
    },
    /// A sub-range that is out of bounds or not granule aligned.
    BadRange {
        /// Start of the range, in bytes from the region's start.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// The region's length.
        region_len: usize,
        /// The region's granule, which the range must be aligned to.
        granule: usize,
    },
    /// The address space after the region is taken.
    CannotGrowInPlace {
        /// The region's length now.
        len: usize,
        /// The length asked for.
        new_len: usize,
    },
    /// Two regions that cannot merge: the second does not start where the
    /// first ends, or their options differ.
    CannotMerge {
        /// Where the first region ends.
        end: usize,
        /// Where the second region starts.
        next_start: usize,
    },
    /// A system call failed.
    System {
        /// The system call, e.g. `"mprotect"`.
        call: &'static str,
        /// What it returned.
        errno: Errno,
    },
    /// This machine cannot run spf.
    Unsupported {
        /// What is missing.
        reason: &'static str,
    },
    /// The calling thread blocks a signal (or both) that spf's lazy commits need
    /// (see [`check_signal_mask`](crate::check_signal_mask)).
    FaultSignalBlocked {
        /// The blocked signal(s), e.g. `"SIGSEGV"`.
        signal: &'static str,
    },
    /// The commit backend asked for (`SPF_BACKEND`) cannot run here.
    BackendUnavailable {
        /// The backend's name (`uffd`, `guard`, `mprotect`).
        backend: &'static str,
        /// Why it cannot run.
        reason: &'static str,
        /// The failing call's error, where one failed.
        errno: Option<Errno>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::ReservationExhausted {
                requested,
                free,
                reserved,
            } => write!(
                f,
                "spf: no free range of {requested} bytes in the {reserved}-byte reservation \
                 ({free} bytes free, possibly fragmented); destroy regions or start with a \
                 larger SPF_RESERVE"
            ),
            Error::TooManyRegions { limit } => write!(
                f,
                "spf: all {limit} region descriptors are in use; destroy regions or raise \
                 SPF_MAX_REGIONS"
            ),
            Error::BadSize { len } => write!(
                f,
                "spf: a region of {len} bytes is not possible; the length must be at least 1 \
                 and fit the reservation"
            ),
            Error::BadGranule { granule } => write!(
                f,
                "spf: granule {granule} is not valid; use a power of two from 4096 (4 KiB) to \
                 2097152 (2 MiB)"
            ),
            Error::BadAlignment { align } => write!(
                f,
                "spf: alignment {align} is not possible; use a power of two no larger than the \
                 reservation (SPF_RESERVE)"
            ),
            Error::BadRange {
                offset,
                len,
                region_len,
                granule,
            } => write!(
                f,
                "spf: range at offset {offset}, length {len} does not fit a region of \
                 {region_len} bytes, or is not aligned to its {granule}-byte granule"
            ),
            Error::CannotMerge { end, next_start } => write!(
                f,
                "spf: cannot merge a region ending at {end:#x} with one starting at \
                 {next_start:#x}: the second must start where the first ends and have the \
                 same options (granule, protection, eager or lazy, populate, speculation, commit-ahead)"
            ),
            Error::CannotGrowInPlace { len, new_len } => write!(
                f,
                "spf: cannot grow a region from {len} to {new_len} bytes in place: the address \
                 space after it is in use; reserve a new region and copy"
            ),
            Error::System { call, errno } => {
                write!(f, "spf: {call} failed with {errno}")?;
                if errno.0 == libc::ENOMEM && call == "mprotect" {
                    write!(
                        f,
                        "; the kernel's vm.max_map_count may be exhausted by scattered \
                         commits: use larger granules or commit-ahead"
                    )?;
                }
                if errno.0 == libc::ENOMEM && call == "mmap (reservation)" {
                    write!(
                        f,
                        "; the address space may be limited (ulimit -v): set SPF_RESERVE \
                         below the default 256g"
                    )?;
                }
                Ok(())
            }
            Error::FaultSignalBlocked { signal } => write!(
                f,
                "spf: this thread blocks {signal}, which spf's lazy memory is committed by: the kernel \
                 kills the process when this thread first touches an uncommitted granule (of a \
                 Region, an Arena or SpfAlloc::lazy() memory); unblock {signal} in this thread \
                 (pthread_sigmask(SIG_UNBLOCK, ...), or leave it out of the sigfillset mask), or \
                 commit the memory before this thread touches it (Region::commit, \
                 Arena::prefault) and allocate with SpfAlloc::new()"
            ),
            Error::Unsupported { reason } => write!(f, "spf: unsupported: {reason}"),
            Error::BackendUnavailable {
                backend,
                reason,
                errno,
            } => {
                write!(
                    f,
                    "spf: the {backend} commit backend cannot run here: {reason}"
                )?;
                if let Some(errno) = errno {
                    write!(f, " ({errno})")?;
                }
                write!(
                    f,
                    "; set SPF_BACKEND=auto (the first that works) or SPF_BACKEND=mprotect \
                     (works everywhere)"
                )
            }
        }
    }
}

impl std::error::Error for Error {}
