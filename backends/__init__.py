"""Style-transfer backends behind one small interface; frameworks load only when used."""
