package netns

// TxChecksum reports whether dev in ns has transmit checksum offload on.
var TxChecksum = txChecksum
