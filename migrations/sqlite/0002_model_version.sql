-- A counter bumped by every change of sites, the supply network and consumers' links, whoever makes
-- it (API, CLI import, another hub process), so the in-memory network index knows when to rebuild.
CREATE TABLE model_version (v BIGINT NOT NULL);
INSERT INTO model_version (v) VALUES (0);
CREATE TRIGGER sites_insert_bump AFTER INSERT ON sites BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER sites_update_bump AFTER UPDATE ON sites BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER sites_delete_bump AFTER DELETE ON sites BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER supply_points_insert_bump AFTER INSERT ON supply_points BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER supply_points_update_bump AFTER UPDATE ON supply_points BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER supply_points_delete_bump AFTER DELETE ON supply_points BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER supply_links_insert_bump AFTER INSERT ON supply_links BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER supply_links_update_bump AFTER UPDATE ON supply_links BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER supply_links_delete_bump AFTER DELETE ON supply_links BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER consumers_insert_bump AFTER INSERT ON consumers BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER consumers_update_bump AFTER UPDATE ON consumers BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER consumers_delete_bump AFTER DELETE ON consumers BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER consumer_sites_insert_bump AFTER INSERT ON consumer_sites BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER consumer_sites_update_bump AFTER UPDATE ON consumer_sites BEGIN UPDATE model_version SET v = v + 1; END;
CREATE TRIGGER consumer_sites_delete_bump AFTER DELETE ON consumer_sites BEGIN UPDATE model_version SET v = v + 1; END;
