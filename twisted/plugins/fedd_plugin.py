"""twistd plugin: `twistd fedd`. The tap module is named as a string so it loads only when used."""

from twisted.application.service import ServiceMaker

fedd = ServiceMaker("fedd", "fedd.tap", "Storage federation daemon for scientific data grids.", "fedd")
