"""Dynafed (UGR) configurations: read them (`reader`) and translate them to fedd's (`translator`);
the `fedd-import-ugr` command is `fedd.ugrimport`."""
