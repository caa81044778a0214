"""hwmodel: MAC-array accelerator and DRAM model fed by the integer program. No torch here."""
