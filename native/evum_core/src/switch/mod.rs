//! The Ethernet switch (being written).
