-- A counter bumped by every change of sites, the supply network and consumers' links, whoever makes
-- it (API, CLI import, another hub process), so the in-memory network index knows when to rebuild.
CREATE TABLE model_version (v BIGINT NOT NULL);
INSERT INTO model_version (v) VALUES (0);

-- Once per transaction: updating the one row for every statement of a 60,000-row import piles up row
-- versions and makes the import quadratic. The transaction-local setting remembers the bump.
CREATE FUNCTION bump_model_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('hub.model_bumped', true) IS DISTINCT FROM 'yes' THEN
        UPDATE model_version SET v = v + 1;
        PERFORM set_config('hub.model_bumped', 'yes', true);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER sites_bump AFTER INSERT OR UPDATE OR DELETE ON sites FOR EACH STATEMENT EXECUTE FUNCTION bump_model_version();
CREATE TRIGGER supply_points_bump AFTER INSERT OR UPDATE OR DELETE ON supply_points FOR EACH STATEMENT EXECUTE FUNCTION bump_model_version();
CREATE TRIGGER supply_links_bump AFTER INSERT OR UPDATE OR DELETE ON supply_links FOR EACH STATEMENT EXECUTE FUNCTION bump_model_version();
CREATE TRIGGER consumers_bump AFTER INSERT OR UPDATE OR DELETE ON consumers FOR EACH STATEMENT EXECUTE FUNCTION bump_model_version();
CREATE TRIGGER consumer_sites_bump AFTER INSERT OR UPDATE OR DELETE ON consumer_sites FOR EACH STATEMENT EXECUTE FUNCTION bump_model_version();
